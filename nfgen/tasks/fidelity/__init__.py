"""Sample quality: FID, KID and precision/recall between a reference set and generated images
(``nfgen eval-fid``), on the Inception features the papers' FID is defined with or on any
TorchScript feature extractor; the reference's statistics cached by content."""
