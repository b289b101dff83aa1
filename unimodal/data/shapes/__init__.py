"""Built-in `shapes`: a procedural world of coloured shapes, compositional captions and edits.

Everything is generated from a seed (no files) and rendered with crisp pixels in pure numpy, so
`unimodal.eval.shapes.judge` can read every attribute back exactly and evaluation measures the
model, not the judge.

The world: 8 well-separated colours (6 used by default), 3 shapes (circle, square, triangle),
2 sizes (small, large), a 3x3 grid of named cells ("top left" ... "bottom right"), a black
background. The geometry is a function of the image size alone (`geometry`):

- image_size >= 30 ("scene" geometry, default 32): each object sits inside its own cell with a
  margin, so up to 9 objects never touch; at 32x32 objects are 5 (small) or 8 (large) pixels.
- 16 <= image_size < 30 ("single" geometry, default 16 for `t2i`, `caption`, `video`): one object,
  larger than a cell (5 and 8 pixels at 16x16), its centre in the named cell.

Tasks (`ShapesDataset(task=...)`), each yielding `Document`s whose `meta` holds the scene(s) as
plain JSON-able dicts:

- `t2i`: `[Text(caption), Image]`; `caption`: `[Image, Text(caption)]` (single shapes by default);
- `scenes`: 1 to 3 objects at 32x32, text then image, captions listing the objects with
  positions, spatial relations ("a small red circle to the left of a large blue square") or
  counts ("two small green triangles"), objects in any order; the default task for training;
- `story`: `[Image, Text(edit), Image, Text(edit), Image, ...]`, 1 to 3 edits that add, remove,
  move or recolour one object; `meta["scenes"]` holds every intermediate scene;
- `video`: `[Text("a red circle moving right"), Image(T x H x W x 3)]`.

Captions are read back by `parse_caption` into a *spec* (objects with optional attributes,
relations between them, the total count); `satisfies(judged, spec)` says whether a judged image
(or a scene) meets it. These are what `unimodal eval` scores with.

Modules, one concept each (everything public is re-exported here):

- `world`: colours, shapes, sizes, cells and relations, `geometry`, objects as dicts, placement;
- `render`: `object_mask`, `render_scene`, `render_video`;
- `captions`: text written from scenes: `scene_caption`, `video_caption`, `edit_instruction`;
- `parsing`: text read back: `parse_caption` (specs), `parse_instruction` (edits);
- `edits`: `EDITS` and `apply_edit`;
- `scoring`: `satisfies`, `object_prf`, `count_correct`, `caption_correct`, `scene_matches`,
  `spec_from_scene`;
- `dataset`: `ShapesDataset`, its `TASKS` and `SPLITS`.
"""

from .captions import NUMBERS, edit_instruction, scene_caption, video_caption
from .dataset import SPLITS, TASKS, ShapesDataset
from .edits import EDITS, apply_edit
from .parsing import parse_caption, parse_instruction
from .render import object_mask, render_scene, render_video
from .scoring import caption_correct, count_correct, object_prf, satisfies, scene_matches, spec_from_scene
from .world import (
    BACKGROUND,
    CELLS,
    COLORS,
    DEFAULT_COLORS,
    DIRECTIONS,
    PALETTE,
    RELATIONS,
    SHAPES,
    SIZES,
    Geometry,
    cell_rc,
    default_xy,
    describe,
    geometry,
    placement_range,
    relation_holds,
    relations_of,
)

__all__ = [
    "BACKGROUND",
    "CELLS",
    "COLORS",
    "DEFAULT_COLORS",
    "DIRECTIONS",
    "EDITS",
    "NUMBERS",
    "PALETTE",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "TASKS",
    "Geometry",
    "ShapesDataset",
    "apply_edit",
    "caption_correct",
    "cell_rc",
    "count_correct",
    "default_xy",
    "describe",
    "edit_instruction",
    "geometry",
    "object_mask",
    "object_prf",
    "parse_caption",
    "parse_instruction",
    "placement_range",
    "relation_holds",
    "relations_of",
    "render_scene",
    "render_video",
    "satisfies",
    "scene_caption",
    "scene_matches",
    "spec_from_scene",
    "video_caption",
]
