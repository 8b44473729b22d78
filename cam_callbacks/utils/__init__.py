"""Shared building blocks below every layer: safe division and Pearson correlation, map normalisation, target
handling, argument checks and the ``Literal`` types of string options. Torch only."""
