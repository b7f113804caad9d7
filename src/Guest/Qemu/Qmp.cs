using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using System.Text;
using System.Text.Json.Nodes;

namespace SEmigrate.Guest.Qemu;

/// <summary>The QEMU Machine Protocol over a unix socket: one JSON command a line, answered by a
/// "return" or "error" object, with asynchronous events in between (skipped).</summary>
internal sealed partial class Qmp : IAsyncDisposable
{
    private readonly Socket socket;
    private readonly StreamReader reader;
    private readonly StreamWriter writer;

    private Qmp(Socket socket)
    {
        this.socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        reader = new StreamReader(stream, Encoding.UTF8);
        writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    public static async Task<Qmp> ConnectAsync(string socketPath, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var qmp = new Qmp(socket);
        _ = await qmp.reader.ReadLineAsync(ct); // greeting
        await qmp.ExecuteAsync("qmp_capabilities", null, ct);
        return qmp;
    }

    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments, CancellationToken ct)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null)
        {
            request["arguments"] = arguments;
        }
        // One command at a time: a guest's control may be lent (LiveGuest.Borrowed), and replies carry no id.
        await gate.WaitAsync(ct);
        try
        {
            await writer.WriteLineAsync(request.ToJsonString().AsMemory(), ct);
            return await ReplyAsync(command, ct);
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>Hands QEMU an open file as <paramref name="name"/> (QMP getfd, the descriptor passed over the
    /// socket), for a migration to or from <c>fd:NAME</c>: QEMU, which runs as a user of its own, reads or
    /// writes a file it could not open itself.</summary>
    public async Task SendFileAsync(string name, SafeFileHandle file, CancellationToken ct)
    {
        var request = Encoding.UTF8.GetBytes(new JsonObject { ["execute"] = "getfd", ["arguments"] = new JsonObject { ["fdname"] = name } }.ToJsonString() + "\n");
        await gate.WaitAsync(ct);
        try
        {
            var added = false;
            file.DangerousAddRef(ref added);
            try
            {
                SendWithDescriptor(socket, request, (int)file.DangerousGetHandle());
            }
            finally
            {
                file.DangerousRelease();
            }
            await ReplyAsync("getfd", ct);
        }
        finally
        {
            gate.Release();
        }
    }

    private async Task<JsonNode?> ReplyAsync(string command, CancellationToken ct)
    {
        while (true)
        {
            var line = await reader.ReadLineAsync(ct)
                ?? throw new IOException($"QEMU closed the QMP connection during '{command}'");
            var reply = JsonNode.Parse(line) as JsonObject;
            if (reply?["error"] is { } error)
            {
                throw new InvalidOperationException($"QMP '{command}' failed: {error["desc"]}");
            }
            if (reply?.ContainsKey("return") == true)
            {
                return reply["return"];
            }
        }
    }

    /// <summary>sendmsg(2) of <paramref name="bytes"/> with one descriptor as SCM_RIGHTS, which .NET's sockets do not offer.</summary>
    private static unsafe void SendWithDescriptor(Socket socket, byte[] bytes, int descriptor)
    {
        const int SolSocket = 1, ScmRights = 1;
        var control = stackalloc byte[24]; // CMSG_SPACE(sizeof(int)) on 64-bit Linux
        new Span<byte>(control, 24).Clear();
        *(ulong*)control = 20; // cmsg_len = CMSG_LEN(sizeof(int))
        *(int*)(control + 8) = SolSocket;
        *(int*)(control + 12) = ScmRights;
        *(int*)(control + 16) = descriptor;
        fixed (byte* data = bytes)
        {
            var iov = new IoVector { Base = data, Length = (nuint)bytes.Length };
            var message = new MessageHeader { Iov = &iov, IovLength = 1, Control = control, ControlLength = 24 };
            nint sent;
            // .NET keeps its sockets non-blocking: a full send buffer says EAGAIN (11), and the next try goes.
            for (var tries = 0; (sent = SendMessage((int)socket.Handle, &message, 0)) < 0 && Marshal.GetLastPInvokeError() is 11 or 4 && tries < 1000; tries++)
            {
                Thread.Sleep(1);
            }
            if (sent != bytes.Length)
            {
                throw new IOException($"sending a descriptor to QEMU: {(sent < 0 ? Marshal.GetLastPInvokeErrorMessage() : $"{sent} of {bytes.Length} bytes sent")}");
            }
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct IoVector
    {
        public byte* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct MessageHeader
    {
        public void* Name;
        public uint NameLength;
        public IoVector* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static unsafe partial nint SendMessage(int socket, MessageHeader* message, int flags);

    private readonly SemaphoreSlim gate = new(1, 1);

    public async ValueTask DisposeAsync()
    {
        await writer.DisposeAsync();
        reader.Dispose();
        socket.Dispose();
        gate.Dispose();
    }
}
