#include "config.h"

#include "blobstore.h"
#include "util.h"

char *blob_path(const char *blob_root, const char *sha256_hex)
{
    return xasprintf("%s/%.2s/%s", blob_root, sha256_hex, sha256_hex + 2);
}
