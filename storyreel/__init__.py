"""storyreel: long-form, multi-shot narrative video generation.

One shared core (sequence layouts, multi-shot attention policies, interleaved 3D RoPE,
per-shot timesteps) drives five published systems: LCT, Mask²DiT, Captain Cinema, TokensGen
and long-take keyframes. See ``docs/`` and the README for the honest scope.
"""

__version__ = "0.1.0"
