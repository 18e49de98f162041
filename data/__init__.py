"""Data loading and preparation: training patches, test sets, disparity readers, augmentation."""
