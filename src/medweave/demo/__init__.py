"""Demo data: a synthetic multimodal cohort with a known ground truth (``generate_phantom``)."""

from .phantom import PatientTruth, PhantomManifest, StudyTruth, generate_phantom

__all__ = ["PatientTruth", "PhantomManifest", "StudyTruth", "generate_phantom"]
