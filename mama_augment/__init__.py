"""mama-augment: keyframes, VLM captions and MAMA training for video-text datasets."""

__version__ = "0.1.0"
