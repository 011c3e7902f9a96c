"""Constants shared by the paths, losses and samplers."""

#: The one time clip near the singular ends of a path: coefficients that
#: divide by `alpha(t)` or `sigma_total(t)` are evaluated at `t` clipped to
#: `[T_CLIP, 1 - T_CLIP]`, and weightings that blow up there are capped.
T_CLIP = 1e-5
