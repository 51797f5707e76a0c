"""Test helpers shared between test folders: stand-ins (TensorRT, Triton, a slow server), model factories and
exported files, bad inputs, detection comparison with a stated tolerance."""
