#!/usr/bin/env node
// Second reader of the deploy app's DICOM SEG (the first is pydicom/highdicom): dcmjs parses the SEG and its
// source images and prints one JSON document on stdout.
//
//   node tests/js/read_seg.js SEG.dcm SOURCE [SOURCE...]     (SOURCE: a DICOM file or a folder, searched deeply)
//
// Per frame (functional groups: the frame's own, else the shared ones): the referenced segment and its codes,
// the ReferencedSOPInstanceUID of the frame's source image, the frame's ImagePositionPatient and
// ImageOrientationPatient, the number of foreground pixels decoded from PixelData, and the referenced source
// image's own position and orientation (null when no given file has that SOP Instance UID). Files that are not
// DICOM are listed under "skipped". Nothing here knows the app: it only reads what the files say.
"use strict";

const fs = require("fs");
const path = require("path");
const dcmjs = require("dcmjs");

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;
dcmjs.log.setLevel("error"); // no warnings on the console: stdout carries only the JSON

const PIXEL_DATA = "7FE00010";
const UNCOMPRESSED = new Set(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"]);

/** A naturalized sequence's first item (dcmjs gives sequences as arrays), or the value itself. */
function first(value) {
  return Array.isArray(value) ? value[0] : value;
}

function code(sequence) {
  const item = first(sequence);
  if (!item) return null;
  return { CodeValue: item.CodeValue, CodingSchemeDesignator: item.CodingSchemeDesignator,
           CodeMeaning: item.CodeMeaning };
}

function numbers(value) {
  if (value === undefined || value === null) return null;
  return (Array.isArray(value) ? value : [value]).map(Number);
}

function dcmjsVersion() {
  let dir = path.dirname(require.resolve("dcmjs")); // .../node_modules/dcmjs/build
  while (!fs.existsSync(path.join(dir, "package.json"))) dir = path.dirname(dir);
  return JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).version;
}

function readDicom(file, withPixels) {
  const buffer = fs.readFileSync(file);
  const arrayBuffer = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  const options = withPixels ? {} : { untilTag: PIXEL_DATA, includeUntilTagValue: false };
  const dicomDict = DicomMessage.readFile(arrayBuffer, options);
  const meta = DicomMetaDictionary.naturalizeDataset(dicomDict.meta);
  const dataset = DicomMetaDictionary.naturalizeDataset(dicomDict.dict);
  return { meta, dataset };
}

function* walk(entry) {
  const stat = fs.statSync(entry);
  if (stat.isDirectory()) {
    for (const name of fs.readdirSync(entry).sort()) yield* walk(path.join(entry, name));
  } else if (stat.isFile()) {
    yield entry;
  }
}

/** Foreground pixels per frame, from the SEG's PixelData (BINARY: 1 bit, LSB first, frames back to back). */
function foregroundPerFrame(seg, transferSyntax) {
  if (!UNCOMPRESSED.has(transferSyntax)) return null; // encapsulated: this reader does not decode it
  const frames = Number(seg.NumberOfFrames || 1);
  const perFrame = Number(seg.Rows) * Number(seg.Columns);
  const parts = Array.isArray(seg.PixelData) ? seg.PixelData : [seg.PixelData];
  const total = parts.reduce((n, p) => n + p.byteLength, 0);
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    bytes.set(new Uint8Array(p), offset);
    offset += p.byteLength;
  }
  const bits = Number(seg.BitsAllocated);
  const counts = [];
  for (let f = 0; f < frames; f++) {
    let n = 0;
    for (let i = f * perFrame; i < (f + 1) * perFrame; i++) {
      if (bits === 1) {
        if (bytes[i >> 3] & (1 << (i & 7))) n++;
      } else if (bytes[i]) {
        n++;
      }
    }
    counts.push(n);
  }
  return counts;
}

function main(argv) {
  if (argv.length < 2) {
    process.stderr.write("usage: node read_seg.js SEG.dcm SOURCE [SOURCE...]\n");
    return 2;
  }
  const [segFile, ...sourceArgs] = argv;
  const { meta, dataset: seg } = readDicom(segFile, true);
  const transferSyntax = meta.TransferSyntaxUID;

  const sources = {};
  const skipped = [];
  for (const arg of sourceArgs) {
    for (const file of walk(arg)) {
      if (path.resolve(file) === path.resolve(segFile)) continue;
      let ds;
      try {
        ds = readDicom(file, false).dataset;
      } catch (err) {
        skipped.push({ file, error: String(err && err.message ? err.message : err) });
        continue;
      }
      if (!ds.SOPInstanceUID) continue;
      sources[ds.SOPInstanceUID] = {
        file,
        SOPClassUID: ds.SOPClassUID,
        SeriesInstanceUID: ds.SeriesInstanceUID,
        FrameOfReferenceUID: ds.FrameOfReferenceUID || null,
        ImagePositionPatient: numbers(ds.ImagePositionPatient),
        ImageOrientationPatient: numbers(ds.ImageOrientationPatient),
      };
    }
  }

  const shared = first(seg.SharedFunctionalGroupsSequence) || {};
  const sharedOrientation = numbers((first(shared.PlaneOrientationSequence) || {}).ImageOrientationPatient);
  const sharedMeasures = first(shared.PixelMeasuresSequence) || {};
  const segments = (seg.SegmentSequence || []).map((s) => ({
    SegmentNumber: Number(s.SegmentNumber),
    SegmentLabel: s.SegmentLabel,
    SegmentAlgorithmType: s.SegmentAlgorithmType,
    SegmentAlgorithmName: s.SegmentAlgorithmName || null,
    SegmentedPropertyCategoryCodeSequence: code(s.SegmentedPropertyCategoryCodeSequence),
    SegmentedPropertyTypeCodeSequence: code(s.SegmentedPropertyTypeCodeSequence),
  }));
  const bySegmentNumber = Object.fromEntries(segments.map((s) => [s.SegmentNumber, s]));
  const foreground = foregroundPerFrame(seg, transferSyntax);

  const frames = (seg.PerFrameFunctionalGroupsSequence || []).map((group, index) => {
    const derivation = first(group.DerivationImageSequence) || {};
    const source = first(derivation.SourceImageSequence) || {};
    const uid = source.ReferencedSOPInstanceUID || null;
    const identification = first(group.SegmentIdentificationSequence || shared.SegmentIdentificationSequence) || {};
    const segmentNumber = Number(identification.ReferencedSegmentNumber);
    const orientation = numbers((first(group.PlaneOrientationSequence) || {}).ImageOrientationPatient);
    const referenced = uid !== null && uid in sources ? sources[uid] : null;
    return {
      index,
      ReferencedSegmentNumber: segmentNumber,
      segment: bySegmentNumber[segmentNumber] || null,
      ReferencedSOPInstanceUID: uid,
      ReferencedSOPClassUID: source.ReferencedSOPClassUID || null,
      ImagePositionPatient: numbers((first(group.PlanePositionSequence) || {}).ImagePositionPatient),
      ImageOrientationPatient: orientation || sharedOrientation,
      DimensionIndexValues: numbers((first(group.FrameContentSequence) || {}).DimensionIndexValues),
      foregroundPixels: foreground ? foreground[index] : null,
      referenced: referenced && {
        file: referenced.file,
        ImagePositionPatient: referenced.ImagePositionPatient,
        ImageOrientationPatient: referenced.ImageOrientationPatient,
        FrameOfReferenceUID: referenced.FrameOfReferenceUID,
      },
    };
  });

  const referencedSeries = (seg.ReferencedSeriesSequence || []).map((s) => ({
    SeriesInstanceUID: s.SeriesInstanceUID,
    ReferencedSOPInstanceUIDs: (s.ReferencedInstanceSequence || []).map((i) => i.ReferencedSOPInstanceUID),
  }));

  const out = {
    reader: `dcmjs ${dcmjsVersion()}`,
    seg: {
      file: segFile,
      TransferSyntaxUID: transferSyntax,
      SOPClassUID: seg.SOPClassUID,
      SOPInstanceUID: seg.SOPInstanceUID,
      Modality: seg.Modality,
      StudyInstanceUID: seg.StudyInstanceUID,
      FrameOfReferenceUID: seg.FrameOfReferenceUID || null,
      SegmentationType: seg.SegmentationType,
      Rows: Number(seg.Rows),
      Columns: Number(seg.Columns),
      NumberOfFrames: Number(seg.NumberOfFrames || 1),
      PixelSpacing: numbers(sharedMeasures.PixelSpacing),
      ImageOrientationPatient: sharedOrientation,
    },
    segments,
    referencedSeries,
    frames,
    sources: Object.keys(sources).length,
    skipped,
  };
  process.stdout.write(JSON.stringify(out, null, 1) + "\n");
  return 0;
}

process.exitCode = main(process.argv.slice(2));
