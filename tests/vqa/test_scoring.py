"""Word error rate and transcript reading on hand-made cases (answer scoring: tests/evaluate/test_answers.py)."""

from __future__ import annotations

from medweave.vqa.speech import wer, word_errors


def test_word_error_rate():
    assert word_errors("is there an opacity", "is their capacity") == (2, 3)  # articles dropped
    assert wer(["a b c", "d"], ["a b c", "d"]) == 0.0
    assert wer(["one two"], ["one"]) == 0.5


def test_spoken_form_and_transcript_correction():
    from medweave.vqa.speech import correct_transcript, question_lexicon, spoken_form

    assert spoken_form("What is/are the opacity near/in the left lung?") == "What is the opacity near the left lung?"
    lex = question_lexicon(["What image modality is this?", "Is there a pneumothorax?"])
    assert "modality" in lex and "is" not in lex
    assert correct_transcript("What image, noality, is this?", lex) == "What image, modality, is this?"
    assert correct_transcript("Is there a new motor rax?", lex) == "Is there a new motor rax?"  # nothing close
