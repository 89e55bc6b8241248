"""The released prompt templates. This folder ships inside the enrich wheel as the package `enrich.prompts`."""
