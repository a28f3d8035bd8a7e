from medweave.report.testing import ctx, phantom_model  # noqa: F401  (shared fixtures: a trained phantom model)
