; Boot sector for the bochs.wasm smoke test (emulators/c2w/smoke_node.mjs).
; pyapptron's own code.  The smoke test embeds the assembled bytes, so nasm
; is only needed to change this file:
;     nasm -f bin -o /tmp/smoke_boot.bin emulators/c2w/smoke_boot.asm
;
; What it checks, printing to COM1 (0x3f8):
;   "real"      the BIOS loaded and ran the boot sector (16-bit real mode)
;   "ud"        UD2 raised #UD and our IVT handler ran: inside Bochs that is
;               exception() -> longjmp() -> back to the CPU loop, i.e. the
;               WASI longjmp-as-wasm-exception path of patch 0001
;   "long64"    the CPU switched to 64-bit long mode (PAE paging, EFER.LME)
;   "pf"        a 64-bit page fault on an unmapped address was delivered to
;               our IDT handler, which then skips the faulting instruction
;   "bye"       before writing "Shutdown" to Bochs' shutdown port 0x8900
bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    cld

    mov dx, 0x3fb                   ; COM1 LCR: 8 data bits (the BIOS leaves 5)
    mov al, 0x03
    out dx, al

    mov si, msg_real
    call puts16

    mov word [6*4], ud_handler      ; IVT[6] = #UD
    mov word [6*4+2], 0
    ud2
    mov si, msg_ud
    call puts16

    ; identity-map the first 2 MiB: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000
    mov di, 0x1000
    mov cx, 0x1800
    xor ax, ax
    rep stosw
    mov word [0x1000], 0x2003
    mov word [0x2000], 0x3003
    mov word [0x3000], 0x0083       ; present, writable, 2 MiB page

    lgdt [gdt_desc]
    mov eax, 0x20                   ; CR4.PAE
    mov cr4, eax
    mov eax, 0x1000
    mov cr3, eax
    mov ecx, 0xc0000080             ; EFER
    rdmsr
    or eax, 0x100                   ; LME
    wrmsr
    mov eax, cr0
    or eax, 0x80000001              ; PG | PE
    mov cr0, eax
    jmp 0x08:long_mode

ud_handler:                         ; real-mode #UD: skip the 2-byte UD2
    push bp
    mov bp, sp
    add word [bp+2], 2
    pop bp
    iret

puts16:                             ; print the NUL-terminated string at DS:SI
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts16
.done:
    ret

putc:                               ; AL -> COM1, waiting for THR empty
    push dx
    push ax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, 0x3f8
    out dx, al
    pop dx
    ret

bits 64
long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, 0x7c00

    mov rax, 1                      ; a 64-bit result proves 64-bit registers
    shl rax, 40
    shr rax, 39
    cmp rax, 2
    jne .halt
    mov rsi, msg_long
    call puts64

    ; IDT at 0x4000 with one gate: vector 14 (#PF) -> pf_handler
    mov rdi, 0x4000
    mov rcx, 512
    xor eax, eax
    rep stosq
    mov rax, pf_handler
    mov word [0x4000 + 14*16], ax
    mov word [0x4000 + 14*16 + 2], 0x08
    mov word [0x4000 + 14*16 + 4], 0x8e00   ; present, 64-bit interrupt gate
    shr rax, 16
    mov word [0x4000 + 14*16 + 6], ax
    lidt [idt_desc]

    mov rax, 0x40000000             ; not mapped: #PF
    mov rax, [rax]                  ; 3 bytes: 48 8b 00
    mov rsi, msg_pf
    call puts64

    mov rsi, msg_bye
    call puts64
    mov dx, 0x3fd                   ; wait until the UART has sent everything
.drain:
    in al, dx
    test al, 0x40                   ; LSR.TEMT
    jz .drain
    mov rsi, msg_shutdown
    mov dx, 0x8900
.sd:
    lodsb
    test al, al
    jz .halt
    out dx, al
    jmp .sd
.halt:
    hlt
    jmp .halt

pf_handler:                         ; skip the 3-byte faulting load
    add qword [rsp + 8], 3          ; [rsp] = error code, [rsp+8] = RIP
    add rsp, 8
    iretq

puts64:
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
    jmp puts64
.done:
    ret

align 8
gdt:
    dq 0
    dq 0x00209a0000000000           ; 0x08: 64-bit code
    dq 0x0000920000000000           ; 0x10: data
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt
idt_desc:
    dw 16*256 - 1
    dq 0x4000

msg_real: db "real ", 0
msg_ud: db "ud ", 0
msg_long: db "long64 ", 0
msg_pf: db "pf ", 0
msg_bye: db "bye", 13, 10, 0
msg_shutdown: db "Shutdown", 0

times 510 - ($ - $$) db 0
dw 0xaa55
