/* Linux ABI values that older system headers may lack (the kernel features are what count). */
#ifndef AIOPMEM_LINUX_H
#define AIOPMEM_LINUX_H

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef O_PATH
#define O_PATH 010000000
#endif

#endif
