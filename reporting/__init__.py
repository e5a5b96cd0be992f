"""Numbers to standard objects: DICOM SEG and SR, renderings, report text, FHIR resources."""
