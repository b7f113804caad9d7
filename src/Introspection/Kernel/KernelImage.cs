using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using K4os.Compression.LZ4;
using SEmigrate.Guest.Memory;
using System.Diagnostics;

namespace SEmigrate.Introspection.Kernel;

/// <summary>What introspection needs from the kernel binary itself: its BTF (structure layouts), its
/// GNU build id (to match a dump's VMCOREINFO BUILD-ID) and its release string. Reads a bzImage
/// (vmlinuz; LZ4 as in Debian's cloud kernel, XZ, gzip) or an uncompressed vmlinux.</summary>
public sealed record KernelImage(byte[] BtfData, string BuildId, string Release)
{
    public static KernelImage Load(string path) => FromBytes(File.ReadAllBytes(path), path);

    /// <summary>From the kernel file's bytes (<paramref name="name"/> only names it in errors): a main host
    /// keeps a running guest's kernel in memory, not on its disk.</summary>
    public static KernelImage FromBytes(byte[] file, string name)
    {
        var path = name;
        var vmlinux = Elf64.IsElf64(file) ? file : Decompress(file, path);
        var sections = Elf64.Sections(vmlinux);
        var btf = sections.FirstOrDefault(s => s.Name == ".BTF")
            ?? throw new InvalidDataException($"{path}: the kernel has no .BTF section (built without CONFIG_DEBUG_INFO_BTF)");
        var buildId = sections.Where(s => s.Type == 7 /* SHT_NOTE */)
            .SelectMany(s => Elf64.Notes(vmlinux, s.Offset, s.Size))
            .Where(n => n.Name == "GNU" && n.Type == 3 /* NT_GNU_BUILD_ID */)
            .Select(n => Convert.ToHexStringLower(vmlinux, (int)n.DescriptorOffset, n.DescriptorSize))
            .FirstOrDefault() ?? "";
        return new KernelImage(vmlinux.AsSpan((int)btf.Offset, (int)btf.Size).ToArray(), buildId, Banner(vmlinux));
    }

    /// <summary>The release from linux_banner ("Linux version 6.1.0-56-cloud-amd64 (...").</summary>
    private static string Banner(ReadOnlySpan<byte> vmlinux)
    {
        var marker = "Linux version "u8;
        var at = vmlinux.IndexOf(marker);
        if (at < 0)
        {
            return "";
        }
        var rest = vmlinux.Slice(at + marker.Length, Math.Min(128, vmlinux.Length - at - marker.Length));
        var end = rest.IndexOf((byte)' ');
        return Encoding.ASCII.GetString(end < 0 ? rest : rest[..end]);
    }

    private static byte[] Decompress(byte[] bz, string path)
    {
        if (bz.Length < 0x250 || BinaryPrimitives.ReadUInt32LittleEndian(bz.AsSpan(0x202)) != 0x53726448 /* "HdrS" */)
        {
            throw new InvalidDataException($"{path}: neither a vmlinux (ELF) nor a bzImage kernel");
        }
        var setupSectors = bz[0x1f1] == 0 ? 4 : bz[0x1f1];
        var payloadOffset = BinaryPrimitives.ReadUInt32LittleEndian(bz.AsSpan(0x248));
        var payloadLength = BinaryPrimitives.ReadUInt32LittleEndian(bz.AsSpan(0x24c));
        var start = (long)(setupSectors + 1) * 512 + payloadOffset;
        if (start + payloadLength > bz.Length)
        {
            throw new InvalidDataException($"{path}: the bzImage payload lies outside the file");
        }
        var payload = bz.AsSpan((int)start, (int)payloadLength);
        if (payload.StartsWith(new byte[] { 0x02, 0x21, 0x4c, 0x18 }))
        {
            return Lz4Legacy(payload, path);
        }
        if (payload is [0xfd, (byte)'7', (byte)'z', (byte)'X', (byte)'Z', ..])
        {
            return Xz(bz.AsMemory((int)start, (int)payloadLength), path);
        }
        if (payload is not [0x1f, 0x8b, ..])
        {
            throw new InvalidDataException($"{path}: unsupported kernel compression (not LZ4, XZ or gzip)");
        }
        using var gzip = new GZipStream(new MemoryStream(bz, (int)start, (int)payloadLength), CompressionMode.Decompress);
        using var output = new MemoryStream();
        gzip.CopyTo(output);
        return output.ToArray();
    }

    /// <summary>XZ with the x86 BCJ filter, as kernels use it: .NET has no XZ decoder and the managed
    /// ones we tried mishandle BCJ, so this uses the machine's xz (xz-utils, in every Debian).</summary>
    private static byte[] Xz(ReadOnlyMemory<byte> payload, string path)
    {
        var start = new ProcessStartInfo("xz", ["-dc"])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        Process xz;
        try
        {
            xz = Process.Start(start) ?? throw new InvalidDataException("could not start xz");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new InvalidDataException($"{path} is XZ-compressed and xz is not installed (apt-get install xz-utils)");
        }
        using (xz)
        {
            var writer = Task.Run(async () =>
            {
                await xz.StandardInput.BaseStream.WriteAsync(payload);
                xz.StandardInput.Close();
            });
            using var output = new MemoryStream();
            var stderr = xz.StandardError.ReadToEndAsync();
            xz.StandardOutput.BaseStream.CopyTo(output);
            xz.WaitForExit();
            writer.GetAwaiter().GetResult();
            // Exit code 2 with output is "trailing garbage" after the stream: the kernel's size trailer.
            if (output.Length == 0)
            {
                throw new InvalidDataException($"{path}: xz could not decompress the kernel: {stderr.GetAwaiter().GetResult().Trim()}");
            }
            return output.ToArray();
        }
    }

    /// <summary>The LZ4 "legacy" format the kernel uses: a magic, then blocks of (u32 compressed size,
    /// data), each at most 8 MiB decompressed.</summary>
    private static byte[] Lz4Legacy(ReadOnlySpan<byte> payload, string path)
    {
        const int blockMax = 8 << 20;
        var output = new MemoryStream();
        var block = new byte[blockMax];
        var at = 4;
        while (at + 4 <= payload.Length)
        {
            var size = BinaryPrimitives.ReadUInt32LittleEndian(payload[at..]);
            if (size == 0x184c2102)
            {
                at += 4; // a new frame's magic
                continue;
            }
            if (size == 0 || at + 4 + size > payload.Length)
            {
                break; // the trailer (uncompressed size) or padding
            }
            var n = LZ4Codec.Decode(payload.Slice(at + 4, (int)size), block);
            if (n < 0)
            {
                throw new InvalidDataException($"{path}: corrupt LZ4 block at payload offset {at}");
            }
            output.Write(block, 0, n);
            at += 4 + (int)size;
        }
        return output.ToArray();
    }
}
