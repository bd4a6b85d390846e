"""Deterministic, checkpointable PyTorch data pipelines.

State is positions, not data: samplers store ``(epoch, position)``, the multi-loader scheduler stores
its place in a schedule it can rebuild, and every state loads with ``torch.load(weights_only=True)``.
"""

from statefuldata.adapters import SkipBatchesLoader
from statefuldata.config import EpochLengthPolicy, MultiDataLoaderConfig, SamplingStrategy
from statefuldata.diagnose import Difference
from statefuldata.epochs import current_epoch
from statefuldata.errors import IncompatibleStateError
from statefuldata.fallback import SkipFallback
from statefuldata.loader import (
    SeededStatefulDataLoader,
    close_loader,
    make_loader,
)
from statefuldata.manager import DataLoaderManager, EpochIterator, PhaseLoader
from statefuldata.permutation import FeistelPermutation
from statefuldata.persample import seeded_call
from statefuldata.phase import Phase
from statefuldata.protocols import CheckpointableIterable, StatefulSampler
from statefuldata.samplers import SequentialSampler, ShuffledSampler
from statefuldata.seeding import RngBackend, derive_seed, sample_rng, seed_everything, seed_worker
from statefuldata.shuffle import ShuffleBuffer
from statefuldata.spec import LoaderSpec, PipelineSpec
from statefuldata.state import DataLoaderState
from statefuldata.testing import Mismatch, ResumeMismatchError, ResumeReport, verify_resume
from statefuldata.wrapping import checkpointable

__all__ = [
    "CheckpointableIterable",
    "DataLoaderManager",
    "DataLoaderState",
    "Difference",
    "EpochIterator",
    "EpochLengthPolicy",
    "FeistelPermutation",
    "IncompatibleStateError",
    "LoaderSpec",
    "Mismatch",
    "MultiDataLoaderConfig",
    "Phase",
    "PhaseLoader",
    "PipelineSpec",
    "ResumeMismatchError",
    "ResumeReport",
    "RngBackend",
    "SamplingStrategy",
    "SeededStatefulDataLoader",
    "SequentialSampler",
    "ShuffleBuffer",
    "ShuffledSampler",
    "SkipBatchesLoader",
    "SkipFallback",
    "StatefulSampler",
    "checkpointable",
    "close_loader",
    "current_epoch",
    "derive_seed",
    "make_loader",
    "sample_rng",
    "seed_everything",
    "seed_worker",
    "seeded_call",
    "verify_resume",
]
