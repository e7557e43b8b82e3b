"""Unified models: networks trained on every category's features at once (:mod:`.unified`), a token's
score being how badly it is reconstructed: RLR and RLR-selfref (:mod:`.rlr`, :mod:`.rlr_selfref` on
:mod:`.reconstruction`) and UniAD (:mod:`.uniad`)."""
