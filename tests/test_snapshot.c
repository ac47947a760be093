#include "testlib.h"
static void t_placeholder(void) { CU_FAIL("not written yet"); }
static void add(CU_pSuite s) { TL_ADD(s, t_placeholder); }
int main(int argc, char **argv) { return tl_main(argc, argv, "snapshot", add); }
