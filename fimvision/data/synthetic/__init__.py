"""Writing the synthetic colour flow-imaging (FlowCam-like) particle data: the embedded default data set.

The generator draws subvisible protein particles of two stress sources (``heat``: compact, dark,
round, granular; ``mechanical``: larger, translucent, filmy or fibrous, irregular) and optionally
``silicone_oil`` droplets and ``air_bubble`` s, as FlowCam-like RGB tiles on a bluish background.
Class morphologies overlap, each antibody (``group``) carries its own nuisance (brightness, size,
background tint, class-specific shifts) and each vial (``sample``) a smaller one, so that a held-out
antibody is harder than a random split.

Colour cue: heat particles are shifted slightly towards red, mechanical ones towards blue, along
:data:`COLOUR_CUE_RGB`, a direction whose BT.601 luminance (0.299 R + 0.587 G + 0.114 B) is exactly
zero. A model on luminance (mono) images therefore cannot use it; a colour model can.

Every particle is a pure function of ``(config, index)``: its random numbers come from a numpy
Generator seeded by ``(seed, stream, index)``, so the output is byte-identical for a seed whatever
the number of worker processes.

Each particle carries instrument-like measurements computed from its rendered mask and pixels, never
from its label (:mod:`fimvision.data.synthetic.measure`), in columns named as curated FlowCam exports
name them (``esd_um``, ``circularity``, ``aspect_ratio``, ``convexity``, ``edge_gradient``,
``avg_red``/``avg_green``/``avg_blue``, ...).

The data are SYNTHETIC: the manifest's ``instrument`` column says ``synthetic-flowcam`` and the
folder holds a ``README.txt`` saying so.
"""

from fimvision.data.synthetic.config import (
    BACKGROUND_RGB,
    COLOUR_CUE_RGB,
    EXTRA_CLASSES,
    FEATURE_COLUMNS,
    INSTRUMENT,
    KNOWN_CLASSES,
    LUMA_BT601,
    MANIFEST_COLUMNS,
    STRESS_CLASSES,
    SyntheticConfig,
    particle_count,
)
from fimvision.data.synthetic.render import SyntheticParticle, render_particle
from fimvision.data.synthetic.writer import iter_particles, write_dataset

__all__ = ["BACKGROUND_RGB", "COLOUR_CUE_RGB", "EXTRA_CLASSES", "FEATURE_COLUMNS", "INSTRUMENT", "KNOWN_CLASSES",
           "LUMA_BT601", "MANIFEST_COLUMNS", "STRESS_CLASSES", "SyntheticConfig", "SyntheticParticle",
           "iter_particles", "particle_count", "render_particle", "write_dataset"]
