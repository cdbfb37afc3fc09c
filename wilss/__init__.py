"""WILSS: weakly-supervised incremental learning for semantic segmentation (WILSON, CVPR 2022)."""
