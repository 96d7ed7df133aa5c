// Functions of the pybind11 module that read and write Python objects rather than tensors:
// the ends of `mmfast classify`'s stream (csrc/cpu/jsonl.cpp).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

namespace mmfast {

// mmfast.data.manifest's chunk of JSONL lines `chunk` (whole lines; the first is line `first`,
// `rows` non-blank lines came before it) -> (rows after it, line numbers, records) of the lines
// of shard `shard_index` of `shard_count`, or None where the chunk needs Python's reading. `keys`:
// the JSON keys of id, image, text, labels, label, image_id; `prefix`: what a relative image path
// is joined to; `record_type`: called with (id, image, text, labels, image_id).
pybind11::object read_jsonl_records(pybind11::bytes chunk, int64_t first, int64_t rows,
                                    int64_t shard_index, int64_t shard_count, pybind11::tuple keys,
                                    pybind11::str prefix, pybind11::object record_type);

// mmfast.predictions.rows' JSONL text: for each of `ids`, its chosen labels (`indices` into
// `label_json`, the names as JSON strings) and their scores as integers of millionths (`micro`,
// each in [0, 10^6]), `k` each or `counts` (int64 [len(ids)]) each. None where an id is not
// UTF-8 (a lone surrogate): Python's writer decides.
pybind11::object json_rows(pybind11::list ids, pybind11::list label_json, pybind11::buffer indices,
                           pybind11::buffer micro, pybind11::object counts, int64_t k);

}  // namespace mmfast
