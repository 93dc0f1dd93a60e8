"""TFDS builders of the project's own (a custom TFDS builder must live inside a package).

Nothing is imported here, so that `import common.datasets` stays cheap: `common.data` imports a
builder's package only when that data set is loaded or prepared.
"""
