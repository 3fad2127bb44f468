"""Eagle v1's config: ``EagleConfig`` (a ``LlamaConfig`` with ``model_type: eagle_llama``).

Follows ``eagle/model/language_model/eagle_llama.py`` (``EagleConfig``) of NVlabs/EAGLE. The
vision part of the config is Eagle's own keys, read as the original reads them:

- ``mm_vision_tower``: the ``;``-joined tower names, in checkpoint order (``clip-448;convnext-1024;
  sam-1024;det-1024;pix2struct-1024`` for X5). Empty names (a trailing ``;``, which Eagle's builder
  needs to take the multi-tower path for one tower) are ignored.
- ``mm_projector_type: mlp2x_gelu`` and ``mm_hidden_size`` (the sum of the tower widths).

encslim adds two optional keys, absent from real checkpoints (the defaults are the real values):

- ``eagle_tower_specs``: ``{tower name: {size key: value}}`` overriding a tower's sizes (tiny models).
- ``eagle_input_image_size`` (1024) and ``eagle_grid_size`` (32): the original's hard-coded
  ``MultiBackboneChannelConcatenationVisionTower.input_image_size`` and ``grid_size``.
"""

from transformers import LlamaConfig

# tower name -> its feature width (mm_hidden_size share), as the original towers' hidden_size say
TOWER_WIDTHS = {
    "clip-448": 1024,        # HRCLIPVisionTower: CLIP ViT-L/14 hidden size
    "convnext-1024": 3072,   # ConvNextVisionTower: hard-coded 3072 (convnext_xxlarge last stage)
    "sam-1024": 1024,        # SAMVisionTower: 256 * 4 with pixel shuffle
    "det-1024": 1024,        # EVAVITVisionTower: EVA-02-L width
    "pix2struct-1024": 1536,  # Pix2StructLargeVisionTower: hard-coded 1536
}
TOWER_NAMES = tuple(TOWER_WIDTHS)
DEFAULT_INPUT_SIZE = 1024
DEFAULT_GRID = 32
IMAGE_TOKEN_INDEX = -200  # eagle/constants.py: the placeholder id spliced into input_ids
EAGLE_KEYS = ("mm_vision_tower", "mm_projector_type", "mm_hidden_size")
TOWER_PREFIX = "model.vision_tower.vision_towers."  # + "{i}." in checkpoint keys
PROJECTOR_WEIGHT = "model.mm_projector.0.weight"
CONVNEXT = "convnext-1024"


def parse_towers(value):
    """The tower names of an ``mm_vision_tower`` string (empty names dropped)."""
    return [name.strip() for name in str(value or "").split(";") if name.strip()]


def join_towers(names):
    """An ``mm_vision_tower`` string Eagle's own builder accepts: one tower keeps a trailing ``;``
    (``build_vision_tower`` only takes the multi-tower path when the string holds a ``;``)."""
    names = list(names)
    return ";".join(names) + (";" if len(names) == 1 else "")


def is_eagle_config(config_dict):
    """Whether a ``config.json`` dict is an Eagle v1 model (by its keys, not ``model_type`` alone)."""
    towers = parse_towers(config_dict.get("mm_vision_tower"))
    return (";" in str(config_dict.get("mm_vision_tower", ""))
            and str(config_dict.get("mm_projector_type", "")).startswith("mlp")
            and bool(towers) and all(t in TOWER_WIDTHS for t in towers)
            and "mm_vision_tower_aux_list" not in config_dict)


class EagleConfig(LlamaConfig):
    """``eagle_llama``: Llama plus Eagle's vision keys (see the module docstring)."""

    model_type = "eagle_llama"

    def __init__(self, mm_vision_tower="clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024",
                 mm_projector_type="mlp2x_gelu", mm_hidden_size=None, eagle_tower_specs=None,
                 eagle_input_image_size=DEFAULT_INPUT_SIZE, eagle_grid_size=DEFAULT_GRID, **kwargs):
        self.mm_vision_tower = mm_vision_tower
        self.mm_projector_type = mm_projector_type
        self.eagle_tower_specs = dict(eagle_tower_specs or {})
        self.eagle_input_image_size = int(eagle_input_image_size)
        self.eagle_grid_size = int(eagle_grid_size)
        super().__init__(**kwargs)
        self.mm_hidden_size = mm_hidden_size if mm_hidden_size is not None else sum(self.tower_widths())

    @property
    def tower_names(self):
        return parse_towers(self.mm_vision_tower)

    def tower_spec(self, name):
        """The size overrides of tower ``name`` (empty: the real sizes)."""
        return dict(self.eagle_tower_specs.get(name) or {})

    def tower_width(self, name):
        from .towers import tower_width

        return tower_width(name, self.tower_spec(name))

    def tower_widths(self):
        return [self.tower_width(n) for n in self.tower_names]

    def tower_columns(self):
        """``{tower: (start, stop)}``: each tower's columns of ``mm_projector.0.weight``."""
        columns, start = {}, 0
        for name in self.tower_names:
            width = self.tower_width(name)
            columns[name] = (start, start + width)
            start += width
        return columns
