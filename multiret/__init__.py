"""multiret: multitask dense retrieval with task-specialising gradient methods (TACO and peers)."""

__version__ = "0.1.0"
