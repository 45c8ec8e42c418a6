"""multiret: multitask dense retrieval with task-specialising gradient methods (TACO and peers)."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``multiret.Retriever``, imported on first use so that ``import multiret`` stays light (torch, FAISS, Hydra load then)."""
    if name == "Retriever":
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the library's entry point, as `multiret` is the command's: no downloads
        from multiret.experiment.retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'multiret' has no attribute {name!r}")
