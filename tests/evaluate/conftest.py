from medweave.vqa.testing import picture, tiny_set, tiny_vqa_model  # noqa: F401  (a real VQA model)
