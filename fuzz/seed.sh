#!/bin/sh
# Seeds fuzz/corpus/<target>/ from the test fixtures (and the data mirror when present).
set -e
cd "$(dirname "$0")"
F=../tests/fixtures
S=${INSITU_MIRROR:-../../shared}/data
mkdir -p corpus/nifti corpus/nrrd corpus/mgh corpus/metaimage corpus/dicom corpus/read
cp $F/nifti/*.nii* corpus/nifti/
cp $F/formats/*.nrrd $F/formats/*.nhdr $F/formats/*.raw corpus/nrrd/
cp $F/formats/*.mg? corpus/mgh/
[ -f $S/nibabel_testfiles/test.mgz ] && cp $S/nibabel_testfiles/test.mgz corpus/mgh/
cp $F/formats/*.mha $F/formats/*.mhd corpus/metaimage/
cp $F/formats/*.dcm corpus/dicom/
[ -d $S/pydicom_testfiles ] && cp $S/pydicom_testfiles/*.dcm corpus/dicom/
[ -d $S/dicom/siemens_prisma_sagittal_gre_series2/dicom ] && cp $S/dicom/siemens_prisma_sagittal_gre_series2/dicom/1.dcm corpus/dicom/sag1.dcm
[ -d $S/totalsegmentator/example_ct_dicom ] && cp "$(ls $S/totalsegmentator/example_ct_dicom/* | head -1)" corpus/dicom/ct_j2k.dcm
for d in nifti nrrd mgh metaimage dicom; do
  for f in corpus/$d/*; do printf '\000' | cat - "$f" > "corpus/read/$d-$(basename "$f")"; done
done
