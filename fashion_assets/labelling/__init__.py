"""Image sets handed to labelling (Label Studio, COCO, CSV) and human labels brought back."""
