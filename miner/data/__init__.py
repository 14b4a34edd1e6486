"""Archives and images: reading the ChestX-ray14 release layout, manifests and DICOM; phantom archives."""
