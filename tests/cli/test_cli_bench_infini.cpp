// Smoke test of `longctx bench infini`: tiny shapes, one worker process per case, table printed.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>

namespace {

TEST(CliBenchInfini, RunsTinyStreamAndDenseCases) {
  const std::string cmd = std::string(LONGCTX_CLI_PATH) +
                          " bench infini --lengths 1024,2048 --dense-lengths 512 --memory-length 0 --heads 2"
                          " --kv-heads 1 --head-dim 16 --segment 256 --chunk 256 --window 512 --min-seconds 0 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), int(buf.size()), pipe)) out += buf.data();
  ASSERT_EQ(pclose(pipe), 0) << out;
  EXPECT_NE(out.find("infini-stream     2048"), std::string::npos) << out;
  EXPECT_NE(out.find("dense-flash"), std::string::npos) << out;
  EXPECT_NE(out.find("MB_vs_1st"), std::string::npos) << out;
}

TEST(CliBenchInfini, RejectsLengthsNotMultipleOfChunk) {
  const std::string cmd = std::string(LONGCTX_CLI_PATH) +
                          " bench infini --lengths 1000 --dense-lengths 512 --memory-length 0 --heads 2 --kv-heads 1"
                          " --head-dim 16 --segment 256 --chunk 256 --min-seconds 0 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), int(buf.size()), pipe)) out += buf.data();
  EXPECT_NE(pclose(pipe), 0);
  EXPECT_NE(out.find("lengths and --window must be multiples of --chunk (256), got 1000"), std::string::npos) << out;
}

}  // namespace
