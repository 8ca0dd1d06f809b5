// Hostile safetensors files: every class of damage the reader and the checkpoint loader refuse
// (include/longctx/model/safetensors.hpp), each with the error it must name. The files are
// written by hand: an 8-byte little-endian header length, the header text, the data bytes.
#include <longctx/model/checkpoint.hpp>
#include <longctx/model/safetensors.hpp>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unistd.h>

namespace longctx {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

fs::path test_dir() {
  const fs::path d = fs::temp_directory_path() / ("longctx_safetensors_" + std::to_string(getpid()));
  fs::create_directories(d);
  return d;
}

// Writes `length` (the header's own size unless given), the header and the data to a new file.
std::string write_raw(const std::string& name, const std::string& header, const std::string& data = "",
                      uint64_t length = std::numeric_limits<uint64_t>::max()) {
  const std::string path = (test_dir() / name).string();
  if (length == std::numeric_limits<uint64_t>::max()) length = header.size();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  for (int i = 0; i < 8; ++i) f.put(char((length >> (8 * i)) & 0xff));
  f << header << data;
  return path;
}

std::string zeros(size_t n) { return std::string(n, '\0'); }

// The error a hand-made file gets from load_safetensors.
void expect_refused(const std::string& name, const std::string& header, const std::string& data,
                    const std::string& needle) {
  const std::string path = write_raw(name, header, data);
  expect_error([&] { load_safetensors(path); }, "longctx: corrupt checkpoint " + path + ": ");
  expect_error([&] { load_safetensors(path); }, needle);
}

ModelConfig tiny_config() {
  return ModelConfig::from_json(
      {{"vocab_size", 16}, {"d_model", 8}, {"n_layers", 1}, {"n_heads", 2}, {"d_ff", 16}, {"max_seq_len", 32}});
}

// A checkpoint of `m` whose tensors pass through `edit` (add, drop or replace some) first.
std::string save_model(const std::string& name, const Transformer& m, const std::string& config_json,
                       const std::function<void(std::vector<std::pair<std::string, const Tensor*>>&)>& edit = {}) {
  std::vector<std::pair<std::string, const Tensor*>> tensors;
  for (const Param& p : m.params()) tensors.push_back({p.name, &p.value});
  if (edit) edit(tensors);
  const std::string path = (test_dir() / name).string();
  save_safetensors(path, tensors, {{"longctx.model_config", config_json}});
  return path;
}

TEST(Safetensors, ValidFileRoundTrips) {
  const Tensor a = testing::random_tensor({3, 5}, 1), b = testing::random_tensor({2, 2, 2}, 2, 1.0f, DType::bf16);
  const Tensor empty({0, 4});
  const std::string path = (test_dir() / "ok.safetensors").string();
  save_safetensors(path, {{"b", &b}, {"a", &a}, {"empty", &empty}}, {{"k", "v"}});
  const SafetensorsFile f = load_safetensors(path);
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.tensors[0].first, "b");  // offset order: as written
  EXPECT_TRUE(testing::bitwise_equal(f.at("a"), a));
  EXPECT_TRUE(testing::bitwise_equal(f.at("b"), b));
  EXPECT_EQ(f.at("empty").shape(), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(f.metadata.at("k"), "v");
  EXPECT_EQ(read_safetensors_metadata(path).at("k"), "v");
  // a model checkpoint loads back into the same weights
  const Transformer m(tiny_config(), 7);
  const Transformer back = load_model(save_model("model.safetensors", m, tiny_config().to_json().dump()));
  ASSERT_EQ(back.params().size(), m.params().size());
  for (size_t i = 0; i < m.params().size(); ++i)
    EXPECT_TRUE(testing::bitwise_equal(back.params()[i].value, m.params()[i].value)) << m.params()[i].name;
}

TEST(Safetensors, HeaderParserReturnsEntriesInOffsetOrder) {
  const SafetensorsHeader h = parse_safetensors_header(
      R"({"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"BF16","shape":[3],"data_offsets":[4,10]},)"
      R"("__metadata__":{"x":"y"}})",
      10, "mem");
  ASSERT_EQ(h.entries.size(), 2u);
  EXPECT_EQ(h.entries[0].name, "z");
  EXPECT_EQ(h.entries[1].name, "a");
  EXPECT_EQ(h.entries[1].dtype, DType::bf16);
  EXPECT_EQ(h.entries[1].shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(h.entries[1].begin, 4u);
  EXPECT_EQ(h.entries[1].end, 10u);
  EXPECT_EQ(h.metadata.at("x"), "y");
}

TEST(Safetensors, TruncatedFilesAreRefused) {
  const std::string tiny = (test_dir() / "tiny.safetensors").string();
  std::ofstream(tiny, std::ios::binary) << "abc";
  expect_error([&] { load_safetensors(tiny); }, "the file has 3 bytes, fewer than the 8-byte header length");
  // the last tensor's data cut short
  expect_refused("cut.safetensors", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", zeros(10),
                 "tensor 'a' data offsets do not match the file: they end at byte 16 of a data section of 10 bytes");
}

TEST(Safetensors, HeaderLengthPastTheEndOrAbsurdIsRefused) {
  const std::string past = write_raw("past.safetensors", "{}", "", 100);
  expect_error([&] { load_safetensors(past); }, "header length 100 runs past the end of the file (10 bytes)");
  const std::string huge = write_raw("huge.safetensors", "{}", "", uint64_t(1) << 62);
  expect_error([&] { load_safetensors(huge); }, "header length 4611686018427387904 is absurd");
}

TEST(Safetensors, HeaderThatIsNotAJsonObjectIsRefused) {
  expect_refused("notjson.safetensors", "{not json", "", "header is not JSON");
  expect_refused("empty.safetensors", "", "", "header is not JSON");
  expect_refused("array.safetensors", "[1, 2]", "", "header is not a JSON object (got [1,2])");
  expect_refused("deep.safetensors", R"({"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}})", zeros(4),
                 "header nests deeper than a safetensors header");
}

TEST(Safetensors, RepeatedKeysAreRefused) {
  // nlohmann::json (and many parsers) would keep the last copy silently
  expect_refused("dupname.safetensors",
                 R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 zeros(8), "header repeats the key 'a' in one object");
  expect_refused("dupfield.safetensors", R"({"a":{"dtype":"F32","dtype":"BF16","shape":[1],"data_offsets":[0,4]}})",
                 zeros(4), "header repeats the key 'dtype'");
}

TEST(Safetensors, MetadataMustBeAnObjectOfStrings) {
  expect_refused("meta_array.safetensors", R"({"__metadata__":["x"]})", "", "__metadata__ is not an object");
  expect_refused("meta_number.safetensors", R"({"__metadata__":{"step":5}})", "",
                 "__metadata__ value 'step' is not a string (got 5)");
}

TEST(Safetensors, MalformedEntriesAndUnknownDtypesAreRefused) {
  expect_refused("dtype.safetensors", R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", zeros(8),
                 "tensor 'a' has dtype \"F64\"; longctx reads \"F32\", \"BF16\" and \"F16\"");
  expect_refused("dtype_num.safetensors", R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", zeros(4),
                 "tensor 'a' has dtype 7");
  expect_refused("missing.safetensors", R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", zeros(4),
                 "tensor 'a' has no shape");
  expect_refused("extra.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", zeros(4),
                 "tensor 'a' has an unknown field 'x'");
  expect_refused("notobj.safetensors", R"({"a":[1]})", "", "tensor 'a' is not a JSON object");
  // a hostile name is printed escaped and cut short
  expect_refused("name.safetensors", "{\"x\\n" + std::string(200, 'y') + "\":1}", "", "tensor 'x\\nyyy");
}

TEST(Safetensors, ShapesThatDisagreeWithTheOffsetsOrOverflowAreRefused) {
  expect_refused("negative.safetensors", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", zeros(4),
                 "tensor 'a' shape [-1] holds -1, not an integer in [0, 2^63)");
  expect_refused("fraction.safetensors", R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,4]}})", zeros(4),
                 "holds 2.5, not an integer");
  expect_refused("ndim.safetensors", R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})",
                 zeros(4), "tensor 'a' has 9 dimensions (at most 8)");
  // 2^62 * 2^62 * 0 is 0 bytes, but Tensor's running element count would overflow on the way
  expect_refused("overflow.safetensors",
                 R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})", "",
                 "has more elements than fit in 64 bits");
  // 2^62 elements of 4 bytes: the element count fits, the byte count does not
  expect_refused("bytes.safetensors", R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})",
                 "", "tensor 'a' data offsets do not match its shape");
  expect_refused("mismatch.safetensors", R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", zeros(20),
                 "tensor 'a' data offsets do not match its shape: [2, 3] of F32 needs 6 x 4 bytes, data_offsets [0, 20] "
                 "hold 20");
}

TEST(Safetensors, OverlappingHoleyOrOutOfRangeOffsetsAreRefused) {
  // aliased tensors would allocate the same 16 bytes once per entry
  expect_refused("overlap.safetensors",
                 R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                 zeros(16), "tensors 'a' [0, 16) and 'b' [0, 16) overlap");
  expect_refused("hole.safetensors",
                 R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                 zeros(12), "bytes [4, 8) of the data belong to no tensor (a hole before tensor 'b')");
  expect_refused("start.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", zeros(8),
                 "bytes [0, 4) of the data belong to no tensor");
  expect_refused("trailing.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", zeros(9),
                 "bytes [4, 9) of the data belong to no tensor (trailing data)");
  expect_refused("reversed.safetensors", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", zeros(8),
                 "tensor 'a' data_offsets must be [begin, end] with 0 <= begin <= end, got [8,4]");
  expect_refused("three.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", zeros(8),
                 "data_offsets must be [begin, end]");
  expect_refused("range.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[1000000,1000004]}})", zeros(4),
                 "data offsets do not match the file: they end at byte 1000004 of a data section of 4 bytes");
}

TEST(Safetensors, NonFiniteWeightsAreAnErrorNamingTheTensorAndCount) {
  Tensor a({4});
  a.f32()[1] = std::nanf("");
  a.f32()[3] = -INFINITY;
  const std::string path = (test_dir() / "nan.safetensors").string();
  save_safetensors(path, {{"w", &a}}, {});
  expect_error([&] { load_safetensors(path); }, "tensor 'w' holds 2 non-finite values (NaN or Inf), the first at index 1");
  // bf16 infinity (0x7f80), written by hand
  expect_refused("bf16inf.safetensors", R"({"h":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})",
                 std::string("\0\0\x80\x7f", 4), "tensor 'h' holds 1 non-finite values");
  // a tensor that is not read is not judged
  EXPECT_TRUE(load_safetensors(path, [](const std::string&) { return false; }).tensors.empty());
}

// F16 (Hugging Face checkpoints) is read as fp32, exactly: normal, subnormal, signed zero, the
// largest half; its Inf is a non-finite weight like any other; the byte count is 2 a value.
TEST(Safetensors, F16IsReadAsExactF32) {
  const uint16_t halves[] = {0x3c00, 0xc100, 0x0001, 0x8000, 0x7bff, 0x3555};
  const std::string data(reinterpret_cast<const char*>(halves), sizeof halves);
  const std::string path = write_raw("f16.safetensors", R"({"h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}})", data);
  const SafetensorsFile f = load_safetensors(path);
  const Tensor& h = f.at("h");
  ASSERT_EQ(h.dtype(), DType::f32);
  EXPECT_EQ(h.shape(), (std::vector<int64_t>{2, 3}));
  const float want[] = {1.0f, -2.5f, std::ldexp(1.0f, -24), -0.0f, 65504.0f, 0.333251953125f};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(h.f32()[i], want[i]) << i;
  EXPECT_TRUE(std::signbit(h.f32()[3]));
  expect_refused("f16inf.safetensors", R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
                 std::string("\0\0\0\x7c", 4), "tensor 'h' holds 1 non-finite values");
  expect_refused("f16size.safetensors", R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", zeros(8),
                 "[2] of F16 needs 2 x 2 bytes");
}

TEST(Safetensors, MetadataReaderChecksTheWholeHeader) {
  const std::string path = write_raw("meta_bad.safetensors",
                                     R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})",
                                     zeros(8));
  expect_error([&] { read_safetensors_metadata(path); }, "tensor 'a' data offsets do not match its shape");
}

TEST(Safetensors, WriterRefusesRepeatedOrReservedNames) {
  const Tensor a({1});
  const std::string path = (test_dir() / "dup_write.safetensors").string();
  expect_error([&] { save_safetensors(path, {{"a", &a}, {"a", &a}}, {}); }, "tensor name 'a' is reserved or used twice");
  expect_error([&] { save_safetensors(path, {{"__metadata__", &a}}, {}); }, "tensor name '__metadata__'");
}

TEST(CheckpointHostile, MissingOrExtraTensorsAreNamed) {
  const Transformer m(tiny_config(), 1);
  const std::string cfg = tiny_config().to_json().dump();
  const Tensor extra({2});
  const std::string more = save_model("more.safetensors", m, cfg, [&](auto& t) { t.push_back({"extra.weight", &extra}); });
  expect_error([&] { load_model(more); }, "checkpoint " + more + ": tensor 'extra.weight' is not a weight of the model");
  const std::string moment =
      save_model("moment.safetensors", m, cfg, [&](auto& t) { t.push_back({"optimizer.m.bogus", &extra}); });
  Transformer target(tiny_config(), 2);
  const SafetensorsFile with_moment = load_safetensors(moment);
  expect_error([&] { load_weights(target, with_moment, moment); },
               "tensor 'optimizer.m.bogus' is not a weight of the model nor an AdamW moment of one");
  const std::string less = save_model("less.safetensors", m, cfg, [](auto& t) { t.pop_back(); });
  expect_error([&] { load_model(less); }, "checkpoint " + less + ": no tensor '" + m.params().back().name + "'");
}

TEST(CheckpointHostile, WrongDtypeOrShapeIsNamed) {
  const Transformer m(tiny_config(), 1);
  const std::string cfg = tiny_config().to_json().dump();
  const std::string name = m.params()[0].name;
  const Tensor half = m.params()[0].value.to(DType::bf16), wrong({3, 3});
  const std::string bf16 = save_model("bf16.safetensors", m, cfg, [&](auto& t) { t[0].second = &half; });
  expect_error([&] { load_model(bf16); }, "tensor '" + name + "' is BF16, the model expects F32");
  const std::string shape = save_model("shape.safetensors", m, cfg, [&](auto& t) { t[0].second = &wrong; });
  expect_error([&] { load_model(shape); }, "tensor '" + name + "' has shape [3, 3], the model expects [16, 8]");
  // an AdamW moment must have its weight's shape too (Trainer::resume copies it by the weight's size)
  const std::string moment = save_model("moment_shape.safetensors", m, cfg,
                                        [&](auto& t) { t.push_back({"optimizer.v." + name, &wrong}); });
  Transformer target(tiny_config(), 2);
  const SafetensorsFile f = load_safetensors(moment);
  expect_error([&] { load_weights(target, f, moment); }, "tensor 'optimizer.v." + name + "' has shape [3, 3]");
}

TEST(CheckpointHostile, InvalidConfigMetadataIsNamed) {
  const Transformer m(tiny_config(), 1);
  const std::string prefix = "corrupt checkpoint ";
  const std::string not_json = save_model("cfg_json.safetensors", m, "{d_model: 8");
  expect_error([&] { load_model(not_json); }, prefix + not_json + ": model config metadata: not JSON");
  const std::string not_object = save_model("cfg_obj.safetensors", m, "[8]");
  expect_error([&] { load_model(not_object); }, prefix + not_object + ": model config metadata: not a JSON object");
  nlohmann::json bad = tiny_config().to_json();
  bad["n_heads"] = 3;
  const std::string invalid = save_model("cfg_invalid.safetensors", m, bad.dump());
  expect_error([&] { read_checkpoint_info(invalid); },
               prefix + invalid + ": model config metadata: n_heads (3) must divide d_model (8)");
  // a valid config far bigger than the file's tensors is refused before the model is built
  nlohmann::json big = tiny_config().to_json();
  big["d_model"] = 1 << 20;
  big["n_heads"] = 1 << 10;
  big["n_kv_heads"] = 1 << 10;
  const std::string huge = save_model("cfg_huge.safetensors", m, big.dump());
  expect_error([&] { load_model(huge); }, prefix + huge + ": model config metadata: it describes a model of ");
}

}  // namespace
}  // namespace longctx
