"""Models that score a patch against a bank of good patches kept from fitting, one model per category:
PatchCore (:mod:`.patchcore`: the nearest atoms' distance) and SGFR (:mod:`.sgfr`: the residual of a
sparse code over the nearest atoms)."""
