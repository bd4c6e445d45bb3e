"""Everything between raw files and a training batch (see DESIGN.md section 2)."""
