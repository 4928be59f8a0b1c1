"""Procedural benchmark: coloured shapes on cluttered backgrounds, as images and tracked clips.

No public dataset can be downloaded where MOBIUS is developed, so training and evaluation use
this generator. The vocabulary is 8 shapes x 8 colours (`vocabulary.py`); generation is fully
determined by a seed.

    from perception_core.training.synth import make_config, generate_image, write_split
    config = make_config("hard", image_size=(256, 256), holdout_compositions="red star")
    image, instances = generate_image(seed=7, config=config, split="val")
    paths = write_split("data/synth", "train", n_images=100, n_videos=5, seed=0, config=config)

Files: shapes.py (outlines, rasterising), appearance.py (object colours, textures),
backgrounds.py, photometric.py (camera effects), compose.py (occlusion-aware painting),
scene.py (images), motion.py + video.py (clips), writer.py (COCO / YouTube-VIS), command.py (CLI).
"""
from .config import DIFFICULTIES, SPLITS, SynthConfig, make_config
from .scene import generate_image
from .video import generate_video
from .vocabulary import (COLORS, SHAPES, SIZES, PromptQuery, VocabularyError,
                         annotations_for_prompts, categories, category_id, composition_of,
                         parse_compositions, parse_prompt, prompt_category_ids, prompt_refers_to,
                         prompts_for)
from .writer import SplitPaths, encode_mask, write_split

__all__ = [
    "COLORS", "DIFFICULTIES", "SHAPES", "SIZES", "SPLITS", "PromptQuery", "SplitPaths",
    "SynthConfig", "VocabularyError", "annotations_for_prompts", "categories", "category_id",
    "composition_of", "encode_mask", "generate_image", "generate_video", "make_config",
    "parse_compositions", "parse_prompt", "prompt_category_ids", "prompt_refers_to",
    "prompts_for", "write_split",
]
