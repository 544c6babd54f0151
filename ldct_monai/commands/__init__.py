"""One module per CLI command; ``ldct_monai.cli`` registers them."""
