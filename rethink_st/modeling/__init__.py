"""Models on Model Garden: backbones (by name), detection (RetinaNet), segmentation (NAS-FPN,
pyramid fusion), classification (pre-training, joint training), init (checkpoint
initialization), anchors (shared with the input pipeline). Import the submodule you need."""
