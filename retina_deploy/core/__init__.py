"""The ground floor: what every layer imports and which imports nothing else of ours (errors, atomic file writes,
artifact names, the output-folder rule, argument checks).
"""
