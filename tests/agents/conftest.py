from medweave.report.testing import ctx, phantom_model  # noqa: F401  (a trained phantom model on its store)
from medweave.vqa.testing import picture, tiny_set, tiny_vqa_model  # noqa: F401  (a real VQA model)
