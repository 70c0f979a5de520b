"""DICOM writers, one module per object: seg (SEG), sr (TID 1500 SR), sc (overlay Secondary Capture)."""
