; Boot sector that starts an already-loaded, uncompressed x86_64 Linux kernel
; (emulators/c2w/build_guest64.py --boot direct).  pyapptron's own code.
;     nasm -f bin -o direct_boot.bin direct_boot.asm
;
; Why: Debian's bzImage is XZ-compressed; under Bochs-in-wasm its
; decompressor alone runs for ~5e9 guest instructions (about a minute).
; build_guest64.py extracts vmlinux from the bzImage at build time, and
; Bochs puts it into guest RAM before the BIOS runs ("optramimage" lines in
; bochsrc: the kernel's load segments as one flat image at 0x1000000, and
; the initrd).  This sector then follows the x86_64 64-bit boot protocol
; (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"):
;   1. read the boot_params "zero page" template (setup header from the
;      bzImage, initrd address/size; the 8 sectors after this one) to
;      0x8000 and the command line (the next sector) to 0x9000, int 13h;
;   2. fill boot_params.e820_table from int 15h/E820h;
;   3. identity-map the first 1 GiB (2 MiB pages), enable PAE + EFER.LME +
;      paging with a flat GDT (0x10 = 64-bit code, 0x18 = data, the
;      __BOOT_CS/__BOOT_DS selectors);
;   4. jump to the kernel's startup_64 at KERNEL_ENTRY with RSI = 0x8000 and
;      interrupts disabled.
; COM1 gets "direct-boot: ..." so that a failure before the kernel shows.

bits 16
org 0x7c00

ZERO_PAGE     equ 0x8000            ; + the command line sector at 0x9000
E820_COUNT    equ ZERO_PAGE + 0x1e8
E820_TABLE    equ ZERO_PAGE + 0x2d0
E820_MAX      equ 128
PML4          equ 0x1000            ; PML4 0x1000, PDPT 0x2000, PD 0x3000
KERNEL_ENTRY  equ 0x1000000

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    cld
    sti
    mov [boot_drive], dl

    mov dx, 0x3fb                   ; COM1 LCR: 8N1 (the BIOS leaves 5 bits)
    mov al, 0x03
    out dx, al
    mov si, msg_hello
    call puts16

    ; 1. zero page template (8 sectors) + command line (1 sector) from
    ;    LBA 1 (CHS 0/0/2) to 0x8000
    mov ax, 0x0209                  ; AH=02 read, AL=9 sectors
    mov cx, 0x0002                  ; cylinder 0, sector 2
    xor dh, dh                      ; head 0
    mov dl, [boot_drive]
    mov bx, ZERO_PAGE
    int 0x13
    jc fail
    cmp dword [ZERO_PAGE + 0x202], 0x53726448   ; "HdrS"
    jne fail

    ; 2. E820 memory map into boot_params.e820_table
    mov di, E820_TABLE
    xor ebx, ebx
    xor bp, bp
.e820:
    mov eax, 0xe820
    mov ecx, 20
    mov edx, 0x534d4150             ; "SMAP"
    int 0x15
    jc .e820_done
    cmp eax, 0x534d4150
    jne .e820_done
    add di, 20
    inc bp
    cmp bp, E820_MAX
    jae .e820_done
    test ebx, ebx
    jnz .e820
.e820_done:
    test bp, bp
    jz fail
    mov [E820_COUNT], bp            ; e820_entries is a byte; BP < 256
    mov si, msg_e820
    call puts16

    ; 3. page tables: 512 x 2 MiB pages = the first 1 GiB, identity-mapped
    cli
    mov di, PML4
    mov cx, 0x1800                  ; 3 pages of 4 KiB, as words
    xor ax, ax
    rep stosw
    mov word [PML4], 0x2003
    mov word [PML4 + 0x1000], 0x3003
    mov di, PML4 + 0x2000
    mov eax, 0x83                   ; present, writable, PS (2 MiB)
    mov cx, 512
.pd:
    mov [di], eax
    add eax, 0x200000
    add di, 8
    loop .pd

    lgdt [gdt_desc]
    mov eax, 0x20                   ; CR4.PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, 0xc0000080             ; EFER.LME
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000001              ; PG | PE
    mov cr0, eax
    jmp 0x10:long_mode

fail:
    mov si, msg_fail
    call puts16
.halt:
    hlt
    jmp .halt

puts16:                             ; NUL-terminated DS:SI -> COM1
    lodsb
    test al, al
    jz .done
    mov ah, al
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov al, ah
    mov dx, 0x3f8
    out dx, al
    jmp puts16
.done:
    ret

bits 64
long_mode:
    mov eax, 0x18
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov fs, eax
    mov gs, eax
    mov esp, 0x7c00
    mov esi, ZERO_PAGE
    mov eax, KERNEL_ENTRY
    jmp rax

align 8
gdt:
    dq 0
    dq 0
    dq 0x00af9a000000ffff           ; 0x10: 64-bit code
    dq 0x00cf92000000ffff           ; 0x18: flat data
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt

boot_drive: db 0
msg_hello: db "direct-boot: ", 0
msg_e820:  db "e820 ok, entering the kernel", 13, 10, 0
msg_fail:  db "failed", 13, 10, 0

    times 510 - ($ - $$) db 0
    dw 0xaa55
