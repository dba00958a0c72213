"""Everything that touches music: notes and pieces, reading MIDI and scores, extraction, rendering, analysis."""
