"""The training recipes (YAML), installed as the package `imagegen_recipes`; see `commands.recipes`."""
