// Base64 (RFC 4648): the standard's test vectors, every byte value, and bad input.
#include <gtest/gtest.h>

#include <string>

#include "core/base64.hpp"
#include "helpers.hpp"

namespace longctx {
namespace {

TEST(Base64, Rfc4648VectorsAndEveryByte) {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},         {"f", "Zg=="},     {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},  {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, coded] : vectors) {
    EXPECT_EQ(base64_encode(plain), coded);
    EXPECT_EQ(base64_decode(coded, "t"), plain);
  }
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  for (size_t n : {size_t(254), size_t(255), size_t(256)}) EXPECT_EQ(base64_decode(base64_encode(all.substr(0, n)), "t"), all.substr(0, n));
  testing::expect_error([] { base64_decode("abc", "meta"); }, "meta: not base64 (length 3 is not a multiple of 4)");
  testing::expect_error([] { base64_decode("ab!d", "meta"); }, "meta: not base64 (byte 2 is '!')");
  testing::expect_error([] { base64_decode("a=bc", "meta"); }, "not base64");
}

}  // namespace
}  // namespace longctx
