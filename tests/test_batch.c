#include "testlib.h"
static void add(CU_pSuite s) { (void)s; }
int main(int argc, char **argv) { return tl_main(argc, argv, "test_batch", add); }
