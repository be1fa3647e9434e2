"""Offline quantitative evaluation: mode coverage for 2D mixtures, a dataset's own classifier
for images (Fréchet distance of its features, class coverage), Inception FID/KID when its
weights are on disk."""
