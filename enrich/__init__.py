"""enrich: tags, links to similar popular listings and exposure priors for new e-commerce listings."""

__version__ = "0.1.0"
