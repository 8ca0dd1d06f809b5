// Smoke test of `longctx bench moe` on a tiny shape: runs, prints the table, rejects bad cases.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace {

std::pair<int, std::string> run(const std::string& args) {
  const std::string cmd = std::string(LONGCTX_CLI_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t r; (r = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, r);
  const int status = pclose(p);
  return {WEXITSTATUS(status), out};
}

TEST(MoeCli, BenchRunsOnATinyShape) {
  const auto [rc, out] = run("bench moe --tokens 96 --d-model 16 --cases dense:32,moe:4:2:16,dense:64 --reps 1");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("vs_active"), std::string::npos) << out;
  EXPECT_NE(out.find("moe:4:2:16  fwdbwd"), std::string::npos) << out;
}

TEST(MoeCli, BadCaseIsAClearError) {
  const auto [rc, out] = run("bench moe --cases moe:4:5:16 --tokens 8 --d-model 8");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("bad case 'moe:4:5:16'"), std::string::npos) << out;
}

}  // namespace
