"""The DICOM codes that the reader (chestxray.dicom) and the gate (chestxray.ood) share.

Free of pydicom, so the gate can judge a caller's facts without importing it: pydicom loads when a DICOM arrives.
"""

# CR, DX (and DR, as some writers label digital radiographs) and fluoroscopy frames are radiographs; a secondary
# capture (OT) or a file without a modality says nothing and is read too. Everything else is refused by name, from
# this table, never from the header. The gate (chestxray.ood) judges a caller's own facts by the same codes.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RF"})
UNINFORMATIVE_MODALITIES = frozenset({"OT"})
READ_MODALITIES = RADIOGRAPH_MODALITIES | UNINFORMATIVE_MODALITIES
OTHER_MODALITIES = {
    "CT": "a CT scan", "MR": "an MRI scan", "US": "an ultrasound image", "NM": "a nuclear medicine image",
    "PT": "a PET scan", "MG": "a mammogram", "XA": "an angiography image", "IO": "an intra-oral dental X-ray",
    "PX": "a panoramic dental X-ray", "DG": "a dental X-ray", "ES": "an endoscopy image", "XC": "a photograph",
    "GM": "a microscopy image", "SM": "a slide microscopy image", "OP": "an eye photograph", "OPT": "an eye scan",
    "IVUS": "an intravascular ultrasound", "OCT": "an optical coherence scan", "SR": "a report", "DOC": "a document",
    "ECG": "an ECG", "SEG": "a segmentation", "RTIMAGE": "a radiotherapy image", "BMD": "a bone density scan",
}
