/* Compiles the public header on its own (twice, for the include guard) as C11 and as C++17
 * with -Wall -Wextra -Werror (-Wpedantic too); scripts/test-c builds and runs it. */
#include "tokenlease.h"
#include "tokenlease.h"

#include <stdio.h>

int main(void) {
    tl_result rc = TL_OK;
    tl_status status;
    tl_event event;
    tl_source_callbacks source;
    tl_store_callbacks store;
    (void)status;
    (void)event;
    (void)source;
    (void)store;
    printf("%s header_check %s\n", rc == TL_OK && sizeof(tl_result) == 4 ? "ok" : "FAIL",
#ifdef __cplusplus
           "c++"
#else
           "c"
#endif
    );
    return 0;
}
