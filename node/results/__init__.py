"""Results: model output encoded as standard DICOM (SEG, TID 1500 SR) and fallbacks
for legacy viewers (secondary capture key images, KOS, a summary page)."""
