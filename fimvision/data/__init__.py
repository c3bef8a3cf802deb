"""Everything that turns dataset folders into batches."""
